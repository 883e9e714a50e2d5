"""Analyses across checkpoints: Fourier structure, key frequencies, neurons, logits, ablations,
progress measures, phases, and the whole study of a run.

===========================  ==================================================================
module                       what it holds
===========================  ==================================================================
``inputs``                   what analyses accept: models, runs, parameter dicts; shape checks
``fourier``                  the Fourier basis of Z_p, FFT shortcuts, the frequency fold, Gini
``groups``                   irreps of S_n, A_n, D_n, C_n; the group Fourier basis (C_n = fourier);
                             a task's structure; group transforms of W_E, W_U, W_L, neurons; the
                             character fit χ_ρ(s(a,b)·c⁻¹)
``keyfreqs``                 key frequencies / key irreps and the registries of rules that choose them
``projections``              the one home of restricted / excluded logits (cos/sin(w(a+b)); the key
                             irreps' matrix elements for any group structure)
``losses``                   cross-entropy on grid logits; restricted and excluded loss
``measures``                 progress measures: Measure protocol, registry, chunked driver
``probes``                   NTK–label alignment, RQI, softmax collapse, update–weight cosine, logit
                             scale (issue 20): functions and opt-in measures
``neurons``                  neuron activations, 2-D Fourier FVE, frequency clusters
``logits``                   the cos(w(a+b−c)) fit and 2-D spectra of the logits
``ablations``                circuit ablations in one tidy table layout
``phases``                   phase boundaries and the circuit-formation date, by written rules
``curves``                   a run's curve pattern (grokking / epoch-wise double descent / neither),
                             by written rules on its evaluations
``summary``                  :func:`analyze_run`: everything the report says about a run
===========================  ==================================================================

Every analysis reads the task's structure (:mod:`grokinterp.tasks.algebra`): ``a + b`` mod p as in the
paper, any other group structure through its irreps, none as undefined. Analyses never import
training, sweeps or figures; they read runs through :mod:`grokinterp.store`.
"""
