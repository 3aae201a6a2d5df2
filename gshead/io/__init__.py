"""Every file format and media reader/writer: images and video (``media``), avatar files
(``avatar``), tracked sequences (``sequence``), pipeline weights (``weights``), PLY (``ply``) and
the built-in demo motion (``motion``). ``gshead.io`` imports only ``gshead.core``."""
