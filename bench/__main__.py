from mtlprune.cli import main

raise SystemExit(main())
