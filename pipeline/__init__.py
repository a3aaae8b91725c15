"""KMA: Koopman mode analysis of neural-network training, at sweep scale.

Importing this package has no side effects: no logging configuration, no Ray start,
no environment reads.
"""

__version__ = "0.1.0"
