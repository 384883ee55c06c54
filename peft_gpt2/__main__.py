import sys

from peft_gpt2.cli import main

sys.exit(main())
