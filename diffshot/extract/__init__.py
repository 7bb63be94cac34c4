"""``diffshot extract``: features from a backbone checkpoint and a folder (or zip, or split CSV) of images.

Modules: ``archs`` (names, no torch), ``backbones``, ``checkpoint``, ``model``, ``images``, ``transforms``,
``run`` (batched, resumable extraction), ``partial`` (the resume file), ``result`` (the FeatureSet written).
"""
