"""Everything between the files users download and the batches the trainer steps on.

builders.py finds or builds a dataset (`python -m fer_jax.data` is its command line); tfexample.py reads its
ArrayRecord files; stats.py normalises; augment.py and pipeline.py make the training and evaluation batches;
faces.py is the face crop and resize shared by the builders, training and prediction.
"""
