"""The configs of jaxsurg's methods, one file a method (``get_config(arg)`` and ``VARIANTS``).

Packaged so that ``jaxsurg --config=<name>`` finds them from any folder; ``configs/`` at the
repository root links here, so ``--config=configs/<name>.py`` works in a checkout.
"""
