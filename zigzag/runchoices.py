"""What a run's settings offer and default to, without torch: ``zigzag.runconfig`` declares the settings from
these, so planning a workflow (which reads the declarations) imports no torch, about 3 s saved in every
Snakemake process. The built-in models' names are ``modelimport.MODELS``, beside the import paths."""

LOSSES = ("cross_entropy", "mse")  # zigzag/losses.py computes them
PRECISIONS = ("fp32", "tf32", "bf16")  # zigzag/precision.py applies them

# The sharpness solver (zigzag/sharpness.py)
TOL = 1e-3  # relative residual |H v - lambda v| / lambda at which a solve stops: lambda within 0.1 % of an eigenvalue
MAX_ITER = 100  # cycles of ncv basis vectors at most
NCV_COLD, NCV_WARM = 20, 8  # Lanczos basis size without and with a start vector v0
# Solves near 2/lr (``SolveSteps``): every 2 steps from half of 2/lr until 0.9 x 2/lr, the analysis's default
# threshold of the edge of stability (eos_tolerance 0.1).
REFINE_EVERY, REFINE_FROM, REFINE_UNTIL = 2, 0.5, 0.9
