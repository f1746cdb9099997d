import protobuf from 'protobufjs';

/** The frames of Signal's chat websocket (docs/protocol.md section 2). Only what a push relay needs is declared. */
const root = protobuf.parse(`
syntax = "proto2";
message WebSocketRequestMessage {
  optional string verb = 1;
  optional string path = 2;
  optional bytes body = 3;
  repeated string headers = 5;
  optional uint64 id = 4;
}
message WebSocketResponseMessage {
  optional uint64 id = 1;
  optional uint32 status = 2;
  optional string message = 3;
  repeated string headers = 5;
  optional bytes body = 4;
}
message WebSocketMessage {
  enum Type { UNKNOWN = 0; REQUEST = 1; RESPONSE = 2; }
  optional Type type = 1;
  optional WebSocketRequestMessage request = 2;
  optional WebSocketResponseMessage response = 3;
}
message Envelope {
  optional int32 type = 1;
  optional uint64 server_timestamp = 10;
  optional bool urgent = 14 [default = true];
  optional bool story = 16;
}
`).root;

const WebSocketMessage = root.lookupType('WebSocketMessage');
const Envelope = root.lookupType('Envelope');

const MessageType = { UNKNOWN: 0, REQUEST: 1, RESPONSE: 2 } as const;

/** uint64 ids are kept as decimal strings: exact, and comparable. */
export interface Request {
  id: string;
  verb: string;
  path: string;
  body: Uint8Array | undefined;
}
interface Response {
  id: string;
  status: number;
}
export type Frame = { type: 'request'; request: Request } | { type: 'response'; response: Response } | { type: 'other' };

const TO_OBJECT = { longs: String, defaults: false } as const;

/** Decodes one binary frame. Throws on malformed input. */
export function decodeFrame(data: Uint8Array): Frame {
  const msg = WebSocketMessage.toObject(WebSocketMessage.decode(data), TO_OBJECT) as {
    type?: number;
    request?: { verb?: string; path?: string; body?: Uint8Array; id?: string };
    response?: { id?: string; status?: number };
  };
  if (msg.type === MessageType.REQUEST && msg.request) {
    const r = msg.request;
    return { type: 'request', request: { id: r.id ?? '0', verb: r.verb ?? '', path: r.path ?? '', body: r.body } };
  }
  if (msg.type === MessageType.RESPONSE && msg.response) {
    return { type: 'response', response: { id: msg.response.id ?? '0', status: msg.response.status ?? 0 } };
  }
  return { type: 'other' };
}

export function encodeResponse(id: string, status: number, message: string): Uint8Array {
  return WebSocketMessage.encode(WebSocketMessage.fromObject({ type: MessageType.RESPONSE, response: { id, status, message } })).finish();
}

export function encodeRequest(id: string, verb: string, path: string): Uint8Array {
  return WebSocketMessage.encode(WebSocketMessage.fromObject({ type: MessageType.REQUEST, request: { id, verb, path } })).finish();
}

/** Whether an envelope asks for a notification: `urgent` absent means urgent. Throws on malformed input. */
export function isUrgentEnvelope(body: Uint8Array | undefined): boolean {
  if (!body || body.length === 0) return true;
  return (Envelope.decode(body) as unknown as { urgent: boolean }).urgent;
}
