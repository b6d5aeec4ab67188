from emudev.cli import main

raise SystemExit(main())
