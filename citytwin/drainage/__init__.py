"""Urban drainage engines (pure): design storms, and later the drainage analyses built on them."""
