import sys

from ctbayes.cli import main

sys.exit(main())
