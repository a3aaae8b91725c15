"""Applications of Koopman mode analysis built on the engine and the store
(convergence verdicts, bad-initialization detection, depth, pruning, acceleration).
Each application is a module here; the CLI and driver call them."""
