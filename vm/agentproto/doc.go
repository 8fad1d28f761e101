// Package agentproto is the wire protocol between gondolin on the host and
// the agent inside the guest. It is shared by both ends and does no I/O of
// its own beyond reading and writing frames.
//
// The channel is one virtio-serial port. Every time a host connects it
// resynchronises with a nonce handshake (see Handshake), because bytes that
// a previous host left in flight may still arrive; then both ends run a
// yamux session over the port. The host opens one yamux stream per
// request. A stream starts with a Request frame; the agent answers with a
// Response frame and, for exec and attach, streams output frames until an
// Exit frame. A stdin stream carries raw bytes after its Request frame and
// ends with the stream's close (EOF).
package agentproto

// PortName is the virtio-serial port name the agent serves on.
const PortName = "org.gondolin.agent"

// Version is bumped on any protocol change; the agent reports its own in
// Info. 2: the PARK handshake, ops refused after a park until setup, and
// the agent's self check (see CheckArg).
const Version = 2
