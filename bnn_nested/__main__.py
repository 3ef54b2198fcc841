import sys

from bnn_nested.cli.main import main

sys.exit(main())
