import sys

from peft_gpt2.cli.main import main

sys.exit(main())
