// Swift bridging header: exposes the edgeast C ABI to Swift.
// Xcode: Build Settings > Swift Compiler - General > Objective-C Bridging Header = path/to/this file,
// and Header Search Paths += path/to/export/cpp/include. Not built here (no Xcode): see README.md.
#import "edgeast_kws.h"
