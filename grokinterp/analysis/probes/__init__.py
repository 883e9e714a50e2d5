"""Probes of lazy→rich training and numerical stability, one file each, and their measures (issue 20).

=================  ===========================================================================
module             what it measures
=================  ===========================================================================
``ntk``            NTK–label alignment (Kumar et al. 2023): centred alignment of the empirical
                   trace NTK with the one-hot label kernel ``Y Yᵀ``
``rqi``            representation quality index (Liu et al. 2022): share of parallelograms
                   ``a + b = c + d`` whose embeddings close
``collapse``       softmax collapse fraction and the update–weight cosine (Prieto et al. 2025)
``logit_scale``    the effective logit scale: per-pair logit std and label margin
``measures``       the probes as opt-in measures (columns over checkpoints)
=================  ===========================================================================

Example:
    >>> from grokinterp.analysis.measures import progress_measures, MEASURES          # doctest: +SKIP
    >>> df = progress_measures(run, measures=["losses", *PROBES])                      # doctest: +SKIP
"""

from __future__ import annotations

from .collapse import collapsed, softmax_collapse, update_weight_cosine
from .logit_scale import logit_margin, logit_std
from .measures import CHEAP_PROBES, PROBES, RQI, NTKAlignment
from .ntk import kernel_alignment, label_kernel, ntk_gram, ntk_subset
from .rqi import representation_quality

__all__ = ["CHEAP_PROBES", "PROBES", "NTKAlignment", "RQI", "collapsed", "kernel_alignment", "label_kernel",
           "logit_margin", "logit_std", "ntk_gram", "ntk_subset", "representation_quality", "softmax_collapse",
           "update_weight_cosine"]
