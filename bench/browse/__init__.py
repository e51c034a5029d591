"""A static, offline feature browser for every SAE of a results folder: ``python -m bench browse DIR``.

Writes ``DIR/browse/`` — ``index.html`` (every SAE with its headline scores), ``sae.html?sae=<key>`` (a
sortable, filterable table of its latents), ``latent.html?sae=<key>&latent=<i>`` (top-activating and random
contexts with each token shaded by its activation, an activation histogram, the decoder's top output tokens,
and the same latent on the other models side by side) — plus the data those pages load lazily from
``data/`` as ``<script>`` files, so the site opens from the file system with no server, network or CDN.
Everything is read from stored runs: the SAEs' weights and activation stores must be present (they are not
committed with ``results/``; an SAE without them is listed as unavailable). ``[browse]`` caps the size.

    python -m bench browse results/default          # → results/default/browse/index.html

``bench.browse.site.write_site`` builds it; this package imports nothing heavy, so the suite config can
import ``bench.browse.config``.
"""
