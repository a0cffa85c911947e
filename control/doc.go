// Package control is the running agent's local API: HTTP over the unix
// socket status_socket, never TCP. `meshd status` reads GET /v1/status,
// `meshd leave` sends POST /v1/leave, `meshd release-removals` sends
// POST /v1/release-removals and `meshd rotate-key` POST /v1/rotate-key.
//
// The socket is created with mode 0660, so only root and the socket's group
// can ask the agent to leave the mesh.
package control
