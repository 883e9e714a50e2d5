"""Analyses across checkpoints: Fourier structure, key frequencies, neurons, logits, ablations,
progress measures, phases, and the whole study of a run.

===========================  ==================================================================
module                       what it holds
===========================  ==================================================================
``inputs``                   what analyses accept: models, runs, parameter dicts; shape checks
``fourier``                  the Fourier basis of Z_p, FFT shortcuts, the frequency fold, Gini
``keyfreqs``                 key frequencies and the registry of rules that choose them
``projections``              the one home of restricted / excluded logits (cos/sin(w(a+b)))
``losses``                   cross-entropy on grid logits; restricted and excluded loss
``measures``                 progress measures: Measure protocol, registry, chunked driver
``neurons``                  neuron activations, 2-D Fourier FVE, frequency clusters
``logits``                   the cos(w(a+b−c)) fit and 2-D spectra of the logits
``ablations``                circuit ablations in one tidy table layout
``phases``                   phase boundaries and the circuit-formation date, by written rules
``summary``                  :func:`analyze_run`: everything the report says about a run
===========================  ==================================================================

Analyses never import training, sweeps or figures; they read runs through :mod:`grokinterp.store`.
"""
