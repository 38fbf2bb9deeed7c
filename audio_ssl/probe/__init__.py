"""What do a checkpoint's features know? SUPERB-style probes on the user's own labelled data,
against MFCC, log-mel and random-weight baselines through the same heads (``audio-ssl probe``).

```python
from audio_ssl.probe import ProbeSettings, parse_task, run_probe

results = run_probe("runs/x/checkpoints/last.ckpt",
                    [parse_task("digits=../shared/data/fsdd/manifest.jsonl:text")],
                    "runs/x/probe", ProbeSettings(seeds=3))
```
"""

from audio_ssl.probe.data import ProbeTask, make_folds, parse_task, read_examples
from audio_ssl.probe.heads import HeadConfig
from audio_ssl.probe.report import compare, load_results
from audio_ssl.probe.run import ProbeSettings, run_probe
from audio_ssl.probe.suite import load_suite

__all__ = ["ProbeTask", "ProbeSettings", "HeadConfig", "parse_task", "read_examples",
           "make_folds", "run_probe", "load_suite", "compare", "load_results"]
