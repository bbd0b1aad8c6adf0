from orchestrator_stub.cli import main

raise SystemExit(main())
