from zigzag.cli import main

raise SystemExit(main())
