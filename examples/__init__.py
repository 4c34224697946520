"""The worked example of README's "Your own network and data". A package, not a bare folder: zigzag finds a
model's file (``examples.mlp:mlp``) without importing it, and a folder without ``__init__.py`` is a namespace
package, which has no file to find."""
