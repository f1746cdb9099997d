// What the cluster benchmark's fake Signal processes (bench/cluster-signal.mjs, one per relay process) saw, put
// together: which sockets each device has and where, the newest-wins rule across them, and for each device how long it
// went without a socket and whether two relays fought over it.

/** `kick(tag, id)`: tells the process `tag` to close its socket `id` with 4409. */
export function signalLedger(kick) {
  /** device -> { sockets: [{ tag, id }], noneSince, gaps: [], lastKick: Map<tag, { by, at }> } */
  const devices = new Map();
  let fights = 0;
  let kicks = 0;
  /** tag -> how many sockets Signal retired because another relay's socket of the device opened */
  const kickedFrom = new Map();

  function opened({ device, tag, id, at }) {
    const d = devices.get(device) ?? { sockets: [], noneSince: undefined, gaps: [], lastKick: new Map() };
    devices.set(device, d);
    if (d.noneSince !== undefined) d.gaps.push(Math.max(0, at - d.noneSince));
    d.noneSince = undefined;
    for (const older of d.sockets) {
      // A fight: this relay's socket of the device was retired by the holder's within the last 10 s.
      const kicked = d.lastKick.get(tag);
      if (kicked && kicked.by === older.tag && at - kicked.at < 10_000) fights++;
      d.lastKick.set(older.tag, { by: tag, at });
      kicks++;
      kickedFrom.set(older.tag, (kickedFrom.get(older.tag) ?? 0) + 1);
      kick(older.tag, older.id);
    }
    d.sockets.push({ tag, id });
  }

  function closed({ device, tag, id, at }) {
    const d = devices.get(device);
    if (!d) return;
    d.sockets = d.sockets.filter((s) => s.tag !== tag || s.id !== id);
    if (d.sockets.length === 0) d.noneSince = at;
  }

  return {
    /** An event from a fake Signal process: `{ ev: 'open' | 'close', device, tag, id, at }`. */
    note: (m) => (m.ev === 'open' ? opened(m) : closed(m)),
    stats: (t) => {
      const perTag = {};
      let open = 0;
      let withoutSocket = 0;
      let worstGapMs = 0;
      let doubled = 0;
      let gapsCounted = 0;
      for (const d of devices.values()) {
        if (d.sockets.length === 0) withoutSocket++;
        if (d.sockets.length > 1) doubled++;
        for (const s of d.sockets) perTag[s.tag] = (perTag[s.tag] ?? 0) + 1;
        open += d.sockets.length;
        const deviceGaps = [...d.gaps, ...(d.noneSince === undefined ? [] : [t - d.noneSince])];
        gapsCounted += deviceGaps.length;
        for (const g of deviceGaps) worstGapMs = Math.max(worstGapMs, g);
      }
      return {
        devices: devices.size,
        open,
        perTag,
        withoutSocket,
        doubled,
        worstGapMs,
        gapsCounted,
        fights,
        kicks,
        kickedFrom: Object.fromEntries(kickedFrom),
      };
    },
    /** Starts a new measuring window: forgets the gaps and kicks recorded so far. */
    reset: () => {
      for (const d of devices.values()) d.gaps = [];
      kicks = 0;
      kickedFrom.clear();
    },
  };
}
