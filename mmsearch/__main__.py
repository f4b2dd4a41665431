from mmsearch.cli import main

raise SystemExit(main())
