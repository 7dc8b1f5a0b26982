"""Signal quality: whether SSO's self-generated preferences are accurate (y+ follows the good principle better than
y-) and on-policy, measured without a judge model. `checkers` scores responses on verifiable features."""
