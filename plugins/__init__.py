"""Domain plugins of sparsity-suite (vision, graph, splat, video, continual, peft).

Each plugin is a sub-package that imports its heavy dependency lazily and registers its
components through the ``sparsity_suite.plugins`` entry-point group, the same way a
third-party package would.
"""
