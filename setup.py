"""Build hook for the optional compiled RAM walker (vmig/stream/_ramwalk.c).

``optional=True``: without a C compiler or Python headers the build goes on and vmig uses its
pure-Python walker (vmig.stream.ram). Everything else is configured in pyproject.toml.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("vmig.stream._ramwalk", ["vmig/stream/_ramwalk.c"], optional=True)])
