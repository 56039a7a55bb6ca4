"""The robust-features experiments of the source talk (protocol 11), on the models the DAG trains.

* :mod:`~iri_alignment.features.nonrobust`: non-robust features (Ilyas et al. 2019): D_det and
  D_rand built by targeted l2 PGD on a standard model, a same-norm noise control, fresh standard
  models trained on each and tested on the original test set; with a positive-control variant of
  ``shapes`` that carries a faint class-keyed pattern.
* :mod:`~iri_alignment.features.saliency`: input-gradient saliency (Tsipras et al. 2019), measured:
  gradient energy inside the shape's mask, per-image AUROC, and cosine alignment with the
  centred image (Etmann et al. 2019); AT vs standard, paired Wilcoxon, Holm.
* :mod:`~iri_alignment.features.repdistance`: representation distance as perceptual distance
  (Engstrom et al. 2019): does the model say x is closer to x + d (an imperceptible
  perturbation that moves the representation as far as it can) than to an image of another class?
* :mod:`~iri_alignment.features.counterfactual`: the talk's "enhance the top two features" figure.
* :mod:`~iri_alignment.features.report`: their tables (CSV, Markdown, LaTeX).
"""
