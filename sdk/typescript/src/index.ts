// @trove/client: a producer of treasure-hunt events and a subscriber to
// hunts over trove's WebSocket JSON protocol (docs/protocol.md), in Node
// (20 and later) and browsers.

export * from "./errors.js";
export * from "./game.js";
export { type Json, parseJson, JSON_DEPTH_MAX } from "./json.js";
export type { ConnectionOptions } from "./options.js";
export {
  ANSWER_TIMEOUT_MS_DEFAULT,
  ASSIGNED_PRODUCER_IDS,
  CLOSE_TIMEOUT_MS_DEFAULT,
  Producer,
  type ProducerOptions,
  type ProducerStats,
  randomProducerId,
} from "./producer.js";
export { INFLATE_WAITING_MAX, Subscriber, type SubscriberItem, type SubscriberOptions, UPDATE_ENTRIES_MAX } from "./subscriber.js";
