"""Families of runs: sweeps over config fields, trained locally or on a Ray cluster, and their tables.

=============  ======================================================================================
module         what it holds
=============  ======================================================================================
``spec``       :class:`SweepSpec` (preset, fixed fields, grid / zip axes, seeds) and its options,
               from Python, a TOML / JSON file or ``--grid`` flags; every point validated up front
``plan``       disk estimate, checkpoint schedules thinned to a disk budget, jobs (stacks or runs)
``executor``   where jobs run: :class:`LocalExecutor` (default) or :class:`RayExecutor`; progress
``driver``     :func:`sweep`, :func:`plan_sweep`, :func:`load_sweep`: the sweep directory
``table``      one row per run (config, epochs to generalise, circuit date, key frequencies, ...),
               and medians / spreads over seeds
=============  ======================================================================================

Layer: above ``analysis`` and ``training`` (it drives one and reads with the other), below ``viz``
and ``cli``. The package is ``sweeps``, not ``sweep``: a subpackage named ``sweep`` would shadow
the function :func:`grokinterp.sweep`.
"""
