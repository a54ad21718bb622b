from bpfree.cli import main

raise SystemExit(main())
