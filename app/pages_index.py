"""The app's pages: (file in pages/, title, url path). The first is the default page.
Each page shows its title as its heading (the browser test checks it)."""

PAGES = [
    ("model.py", "Model & SAE", "model"),
    ("circuits.py", "Arithmetic circuits", "circuits"),
    ("activation.py", "Activation model", "activation-model"),
    ("scrubbing.py", "Causal scrubbing", "causal-scrubbing"),
    ("tail_risk.py", "Tail risk", "tail-risk"),
]
