"""The worker's live capture loop: grab, publish, overlay the model, carry out the UI's requests.

Three threads beside the job loop, none of which the job loop ever waits for (a dead capture
device is only a state in `status.json`):

- grab (`grab`): reads the source, watches the signal, reopens a lost source with back-off,
  keeps `clip_seconds` of scan-area crops for "Save clip", and hands each frame to `publish`,
  which writes the newest frame as JPEG plus `status.json` into the RAM-backed live folder
  (each file written whole, then renamed).
- inference (`infer`): takes the newest published frame only (older ones are dropped, so the
  overlay never falls behind), crops the scan area, runs the configured model with the area's
  pixel size so areas are in mm², and writes `overlay.json` in full-frame pixel coordinates. A
  black or frozen signal gets no overlay.
- control (`control`): every ~100 ms takes the UI's requests from the store (freeze, resume,
  save frame, save clip), refreshes the device's calibration, and keeps `status.json` fresh
  when no frames come. Saves (`save`) go through `store.ingest` like a DICOM push, so they get
  the normal analysis.

A user's freeze holds the published picture (and the clip up to it); resume starts the clip
afresh, so a saved clip is always continuous video. The scan area (`area`) is the device's
calibration (set by an admin, from the store), else `capture.region`, else found by
`detect_region`; its mm per pixel the calibration's, else `capture.mm_per_pixel`, else unknown
(no mm²). What the threads share is in `state`; `loop` wires them together and starts them.

Each thread that uses the store has its own connection (`Store.conn` is per thread) and closes
it when it ends.
"""
