DROP TABLE user_settings;
DROP TABLE messages;
DROP TABLE users;
