from estimators.cli import main

raise SystemExit(main())
