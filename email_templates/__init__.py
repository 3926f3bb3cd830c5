"""Email templates, one folder per kind (``<kind>/subject.<lang>.txt``, ``body.<lang>.txt``, ``body.<lang>.html``)."""
