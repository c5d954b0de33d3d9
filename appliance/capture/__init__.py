"""The capture capability room: live ultrasound video from a USB grabber, a GStreamer pipeline
or a video file; signal checks (no signal, black, frozen); the scan region inside the grabbed
frame. The worker role owns the device; nothing here touches the store. Source kinds made
elsewhere (the demo's generated scanner screen, in `appliance.phantoms`) are handed to
`sources.open_source` by the entry layer, since this room may not import demo material.
"""
