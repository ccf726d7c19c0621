"""``python -m app [--host H] [--port P]``: serve the API with the hardened launcher."""

from app.server import main

if __name__ == "__main__":
    main()
