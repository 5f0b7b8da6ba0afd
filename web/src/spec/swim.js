// The messages of /dinet/swim/1 (docs/protocol.md, "Membership (SWIM)"): liveness probes
// with membership news riding on them. Closed schemas, as the reference decodes them.

import { array, int, literal, object, str, tagged } from "./schema.js";

export const SWIM_PROTOCOL = "/dinet/swim/1";
export const MAX_SWIM_FRAME = 4096;
const MAX_NEWS = 6;
const count = () => int({ ge: 0, lt: 2n ** 63n });

export const NewsItem = object([
  ["peer_id", str({ min: 1, max: 128 })],
  ["state", literal("alive", "suspect", "dead")],
  ["incarnation", count()],
]);

const news = () => array(NewsItem, { max: MAX_NEWS });

export const SwimRequest = tagged({
  swim_ping: object([
    ["kind", literal("swim_ping")],
    ["probe_id", count()],
    ["incarnation", count()],
    ["news", news(), { default: [] }],
  ]),
  swim_ping_req: object([
    ["kind", literal("swim_ping_req")],
    ["probe_id", count()],
    ["target", str({ min: 1, max: 128 })],
    ["incarnation", count()],
    ["news", news(), { default: [] }],
  ]),
});

export const SwimAck = object([
  ["kind", literal("swim_ack"), { default: "swim_ack" }],
  ["probe_id", count()],
  ["incarnation", count()],
  ["news", news(), { default: [] }],
]);

export const SwimNack = object([
  ["kind", literal("swim_nack"), { default: "swim_nack" }],
  ["probe_id", count()],
]);
