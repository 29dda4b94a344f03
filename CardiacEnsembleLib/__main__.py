from CardiacEnsembleLib.cli import main

raise SystemExit(main())
