"""What tests, demos and benchmarks without data build on: synthetic scenes with exact
geometry (:mod:`.scenes`), tiny benchmark data sets in the official layouts
(:mod:`.benchmarks`), tiny training data sets (:mod:`.training`) and randomly initialised
matchers saved in the official checkpoint layout (:mod:`.random_init`). Nothing of the
library imports this package; only the CLI (``l2m make-checkpoint``) and tests do."""
