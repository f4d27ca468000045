import sys

from pipeline.synth.cli import main

sys.exit(main())
