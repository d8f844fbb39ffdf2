#include "shmkv/status.h"

#include <cerrno>

#include <gtest/gtest.h>

namespace shmkv {
namespace {

TEST(Status, DefaultIsOk) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.ToString(), "OK");
}

TEST(Status, FromErrnoKeepsErrnoAndMapsCommonCodes) {
  EXPECT_EQ(Status::FromErrno("open x", ENOENT).code(), StatusCode::kNotFound);
  EXPECT_EQ(Status::FromErrno("open x", EEXIST).code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(Status::FromErrno("write x", ENOSPC).code(), StatusCode::kFull);
  Status s = Status::FromErrno("mmap segment 'a'", EACCES);
  EXPECT_EQ(s.code(), StatusCode::kIoError);
  EXPECT_EQ(s.sys_errno(), EACCES);
  EXPECT_EQ(s.message(), "mmap segment 'a': Permission denied");
}

TEST(Status, WithContextPrefixesAndKeepsCode) {
  Status s = Status::NotFound("no such key").WithContext("lookup");
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_EQ(s.ToString(), "NotFound: lookup: no such key");
  EXPECT_TRUE(Status::Ok().WithContext("ignored").ok());
}

TEST(Result, HoldsValueOrError) {
  Result<int> good = 7;
  ASSERT_TRUE(good.ok());
  EXPECT_EQ(*good, 7);
  EXPECT_TRUE(good.status().ok());
  Result<int> bad = Status::Full("pool full");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kFull);
}

}  // namespace
}  // namespace shmkv
