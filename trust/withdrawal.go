package trust

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
)

// withdrawalContext prefixes what a host's identity signs to take its own
// entry out of the mesh.
const withdrawalContext = "meshd-withdrawal-v1\x00"

// WithdrawalBytes is what a host's identity signs when node leaves the
// mesh for good: the context, the version, the node and a serial above
// every serial its entries had (an entry signed later, with a higher
// serial, outlives the withdrawal).
func WithdrawalBytes(node string, serial uint64) []byte {
	var b bytes.Buffer
	b.WriteString(withdrawalContext)
	b.WriteByte(Version)
	b.WriteByte(byte(len(node)))
	b.WriteString(node)
	binary.Write(&b, binary.BigEndian, serial)
	return b.Bytes()
}

// SignWithdrawal signs the withdrawal of the signer's node at serial.
func (s *Signer) SignWithdrawal(serial uint64) []byte {
	return ed25519.Sign(s.identity, WithdrawalBytes(s.parsed.Node, serial))
}

// VerifyWithdrawal reports whether sig is identity's signature of node's
// withdrawal at serial.
func VerifyWithdrawal(identity ed25519.PublicKey, node string, serial uint64, sig []byte) bool {
	return verify(identity, WithdrawalBytes(node, serial), sig)
}
