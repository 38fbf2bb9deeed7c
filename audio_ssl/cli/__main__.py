"""``python -m audio_ssl.cli``: the `audio-ssl` command (as torchrun and SLURM launch it)."""

import sys

from audio_ssl.cli import main

sys.exit(main())
