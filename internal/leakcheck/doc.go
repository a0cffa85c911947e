// Package leakcheck fails a package's tests when they leave goroutines
// running: every goroutine meshd starts belongs to a context or a group
// that its owner ends and waits for, so after the last test none may be
// left. Use it from TestMain:
//
//	func TestMain(m *testing.M) { leakcheck.Main(m) }
//
// It compares the goroutines alive after the tests with those alive before
// them, and ignores only goroutines that the standard library keeps for
// itself (idle HTTP keep-alive connections of a client's pool, signal
// delivery), which no code of meshd's can end.
package leakcheck
