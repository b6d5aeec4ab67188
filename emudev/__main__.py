from emudev.launch import main

raise SystemExit(main())
