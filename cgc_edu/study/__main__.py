"""``python -m cgc_edu.study``: run (or resume) the study; ``--help`` lists the options."""
from .runner import main

if __name__ == "__main__":
    main()
