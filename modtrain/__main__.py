import sys

from modtrain.cli import main

sys.exit(main())
