"""Holds the ``sitecustomize.py`` that ``aegis-ckpt run --inject`` puts at the front of the child's PYTHONPATH.

This folder itself is what goes on the path; it is a package only so that wheels ship it.
"""
