"""The capture capability room: live ultrasound video from a USB grabber, a GStreamer pipeline,
a video file or a generated B-mode sector; signal checks (no signal, black, frozen); the scan
region inside the grabbed frame. The worker role owns the device; nothing here touches the store.
"""
